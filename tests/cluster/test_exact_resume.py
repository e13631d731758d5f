"""A run stopped after iteration 2 and resumed to iteration 4 is the uninterrupted 4-iteration run:
the same metrics.jsonl (timings aside) and the same final weights, bit for bit in float32 on CPU.

What it takes: every sampling seed derives from the run seed, the iteration, the sample and the
rollout index (rollouts, reflections, resampling, replay draws), never from a per-actor counter; the
checkpoint carries the optimizer state, the lr schedule's step, the data stream and the replay buffer;
the learner runs torch's deterministic kernels (`learner.deterministic`); and each engine call's
requests reach vLLM's scheduler as one batch (`actors.engine.Engine._one_batch`)."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from cluster.config import load_config
from cluster.train import latest_checkpoint, run_train

pytestmark = pytest.mark.slow

OVERRIDES = [
    "cluster.prompts_per_iteration=4",
    "rollout.group_size=4",
    "rollout.num_workers=1",
    "rollout.num_cpus_per_worker=0.5",
    "learner.num_ranks=1",
    "learner.num_cpus_per_rank=0.5",
    "reward.num_cpus_per_worker=0.5",
    "rollout.max_new_tokens=24",
    "data.replay_share=0.5",  # the replay buffer (and its seeded draws) travels with the checkpoint
    "cluster.eval_every=0",
    "cluster.checkpoint_every=2",
    "cluster.dump_rollouts=0",
    "cluster.tensorboard=false",
    "learner.micro_batch_size=4",
    "learner.warmup_steps=2",  # the lr schedule's position must resume too
]
WALL_CLOCK = ("timing_s/", "throughput/", "train/train_s")


def _metrics(run) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith(WALL_CLOCK)} for row in rows]


def test_a_resumed_run_is_the_uninterrupted_run_bit_for_bit(
    ray_local, tmp_path, random_init_tiny_model, capsys
):
    common = [*OVERRIDES, f"model.path={random_init_tiny_model}", f"cluster.output_dir={tmp_path}"]
    assert run_train(load_config(None, [*common, "cluster.iterations=4", "cluster.run_name=whole"])) == 0
    assert run_train(load_config(None, [*common, "cluster.iterations=2", "cluster.run_name=parts"])) == 0
    run = tmp_path / "parts"
    assert (run / "checkpoints" / "iter_000002" / "optimizer" / "rank000-of-001.safetensors").is_file()
    with (run / "metrics.jsonl").open("a") as f:  # an attempt that died after logging iteration 2
        f.write(json.dumps({"iteration": 2, "policy_version": 99}) + "\n")
    capsys.readouterr()
    resumed = load_config(None, [*common, "cluster.iterations=4", "cluster.run_name=parts"])
    assert run_train(resumed, resume=True) == 0
    assert "learner: optimizer state restored" in capsys.readouterr().out

    # one history: the dead attempt's record was set aside, not lost
    replaced = (run / "metrics.replaced.jsonl").read_text().splitlines()
    assert [json.loads(line)["policy_version"] for line in replaced] == [99]
    whole, parts = _metrics(tmp_path / "whole"), _metrics(run)
    assert [m["iteration"] for m in parts] == [0, 1, 2, 3]
    for a, b in zip(whole, parts, strict=True):
        assert a == b, {k: (a.get(k), b.get(k)) for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    final = [latest_checkpoint(tmp_path / name) for name in ("whole", "parts")]
    assert [c.name for c in final] == ["iter_000004", "iter_000004"]
    weights = [load_file(c / "model.safetensors") for c in final]
    assert weights[0].keys() == weights[1].keys() and len(weights[0]) > 10
    assert all(weights[0][k].equal(weights[1][k]) for k in weights[0])
    assert (run / "learning_curve.png").stat().st_size > 0  # `train` draws it, not only `pipeline`
