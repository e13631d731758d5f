"""Chaos on the real stack: one `emo-r3 train` run (vLLM rollout and judge engines in Ray actors,
DeepSpeed learner ranks on gloo, the collective weight transport) whose rollout pool is scaled
1 -> 3 -> 2 with `emo-r3 scale` while it runs, and whose processes are SIGKILLed in the middle of
iterations: a grown rollout worker while it generates and the reward worker while it judges
(iteration 1), a learner rank while it trains (iteration 2). The run replaces the workers in place,
restarts itself from its checkpoint for the learner (keeping the scaled pool), finishes every
iteration and the final held-out evaluation, and leaves no engine process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import pytest
import ray

from cluster.cli import main as emo_r3
from cluster.config import load_config
from cluster.metrics import MetricsLog
from cluster.pools import LearnerGroup, RewardPool, RolloutPool
from cluster.train import latest_checkpoint, run_train

pytestmark = pytest.mark.slow

OVERRIDES = [
    "cluster.iterations=3",
    "cluster.prompts_per_iteration=4",
    "rollout.group_size=4",
    "rollout.num_workers=1",
    "rollout.num_cpus_per_worker=0.3",  # 3 of them, the judge and 2 ranks fit the 2 CPUs
    "learner.num_ranks=2",
    "learner.num_cpus_per_rank=0.4",
    "reward.num_cpus_per_worker=0.2",
    "rollout.max_new_tokens=24",
    "cluster.eval_every=3",
    "cluster.eval_limit=2",
    "cluster.checkpoint_every=1",
    "cluster.dump_rollouts=0",
    "cluster.tensorboard=false",
    "learner.micro_batch_size=4",
]


def _pid(actor) -> int:
    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=120)


def _sigkill_soon(actor, delay_s: float, killed: list) -> None:
    """SIGKILL the actor's process `delay_s` from now (its pid asked first, while it is idle)."""
    pid = _pid(actor)
    killed.append(pid)
    threading.Timer(delay_s, os.kill, (pid, signal.SIGKILL)).start()


def _engine_processes() -> set[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if "VLLM::" in line}


@pytest.fixture
def chaos(monkeypatch):
    """Patch the pools so each kill happens once, mid-call, at its iteration (the pools' version)."""
    killed: dict[str, list] = {"rollout": [], "reward": [], "learner": []}
    submit_stream, submit_score, train = (
        RolloutPool.submit_stream,
        RewardPool.submit_score,
        LearnerGroup.train,
    )

    def kill_rollout_while_generating(pool, requests, worker):
        if pool.slots.version == 1 and worker == 1 and not killed["rollout"]:
            _sigkill_soon(pool.actors[worker], 1.0, killed["rollout"])
        return submit_stream(pool, requests, worker)

    def kill_reward_while_judging(pool, items, version, timeout_s, worker):
        if version == 1 and not killed["reward"]:
            _sigkill_soon(pool.actors[worker], 0.5, killed["reward"])
        return submit_score(pool, items, version, timeout_s, worker)

    def kill_a_rank_while_training(group, shards, num_tokens, timeout_s):
        if len(killed["learner"]) == 0 and _iteration(group) == 2:
            _sigkill_soon(group.ranks[1], 1.0, killed["learner"])
        return train(group, shards, num_tokens, timeout_s)

    log = MetricsLog.log

    def scale_as_iterations_end(metrics_log, iteration, metrics):  # a user typing `emo-r3 scale`
        log(metrics_log, iteration, metrics)
        if (target := {0: 3, 1: 2}.get(iteration)) is not None and "train/loss" in metrics:
            assert emo_r3(["scale", str(metrics_log.path.parent), f"rollout={target}"]) == 0

    monkeypatch.setattr(MetricsLog, "log", scale_as_iterations_end)
    monkeypatch.setattr(RolloutPool, "submit_stream", kill_rollout_while_generating)
    monkeypatch.setattr(RewardPool, "submit_score", kill_reward_while_judging)
    monkeypatch.setattr(LearnerGroup, "train", kill_a_rank_while_training)
    return killed


_trained: dict[int, int] = {}


def _iteration(group) -> int:
    """The iteration a learner group trains: how many times this group trained before."""
    n = _trained.get(id(group), 0)
    _trained[id(group)] = n + 1
    return n


def test_a_run_scaled_1_3_2_survives_losing_a_rollout_worker_a_reward_worker_and_a_learner_rank(
    ray_local, tmp_path, random_init_tiny_model, chaos, capsys
):
    before = _engine_processes()
    cfg = load_config(
        None,
        [
            *OVERRIDES,
            f"model.path={random_init_tiny_model}",
            f"cluster.output_dir={tmp_path}",
            "cluster.run_name=c",
        ],
    )
    assert run_train(cfg) == 0
    out = capsys.readouterr().out
    assert all(len(pids) == 1 for pids in chaos.values()), chaos  # each kill happened once

    run = tmp_path / "c"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    iterations = [r for r in rows if "train/loss" in r]
    assert [r["iteration"] for r in iterations] == [0, 1, 2]  # every iteration once, one history
    for r in iterations:
        assert r["rollout/unscorable_rate"] == 0.0  # every group generated and scored
        assert r["rollout/groups"] == 4 and r["rollout/rollouts"] >= 16
    assert [r["rollout/workers"] for r in iterations] == [1, 3, 2]  # iteration 2 after the restart too
    assert iterations[1]["timing_s/scale"] > 0 and iterations[0]["timing_s/scale"] == 0
    assert "iteration 1: rollout workers 1 -> 3" in out and "iteration 2: rollout workers 3 -> 2" in out
    one = iterations[1]
    assert one["recovery/rollout_restarts"] == 1 and one["recovery/reward_restarts"] == 1
    assert one["recovery/rollout_resubmitted_groups"] >= 1 and one["recovery/reward_resubmitted_groups"] >= 1
    assert (
        "rollout worker 1 died: replaced (1 of 3)" in out and "reward worker 0 died: replaced (1 of 3)" in out
    )
    # the learner's loss restarted the run from the checkpoint after iteration 1 (iteration 2 redone)
    assert "learner rank 1 died" in out and "the run restarts from" in out and "iter_000002" in out
    assert iterations[2]["recovery/run_restarts"] == 1 and iterations[2]["timing_s/run_restart"] > 0
    assert iterations[0]["recovery/run_restarts"] == 0
    final = rows[-1]
    assert final["eval/policy_version"] == 3 and "eval/A^I" in final  # the final held-out evaluation ran
    assert latest_checkpoint(run).name == "iter_000003"
    # the killed actors' engine processes went with them (a closed actor's take a moment to exit)
    deadline = time.monotonic() + 60
    while not _engine_processes() <= before and time.monotonic() < deadline:
        time.sleep(1)
    assert _engine_processes() <= before
