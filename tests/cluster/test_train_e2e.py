"""The EMO-R3 loop end to end on the real stack: vLLM rollout and judge engines in Ray actors,
DeepSpeed learner ranks on gloo, weight pushes through the collective transport (the default), HF
checkpoints."""

from __future__ import annotations

import json
import math
from functools import partial

import pytest
import ray

from actors.rollout import RolloutWorker
from actors.types import SamplingSettings
from cluster.config import load_config
from cluster.data.images import load_image
from cluster.metrics import MetricsLog
from cluster.session import TrainingCluster
from cluster.settings import engine_settings, image_policy, prompt_request
from cluster.sources import load_samples
from cluster.train import RunOutput, RunState, train_loop

pytestmark = pytest.mark.slow

OVERRIDES = [
    "cluster.iterations=2",
    "cluster.prompts_per_iteration=4",
    "rollout.group_size=4",
    "rollout.num_workers=2",
    "rollout.num_cpus_per_worker=0.4",
    "learner.num_ranks=2",
    "learner.num_cpus_per_rank=0.4",
    "reward.num_cpus_per_worker=0.2",
    "rollout.max_new_tokens=24",
    "cluster.eval_every=0",
    "cluster.dump_rollouts=4",
    "learner.micro_batch_size=4",
    "learner.warmup_steps=0",  # two iterations must change the greedy outputs: full-lr updates
]
GREEDY = SamplingSettings(n=1, temperature=0.0, max_new_tokens=24)


def _greedy(actor, probe) -> list[list[int]]:
    return [g.completions[0].token_ids for g in ray.get(actor.generate.remote(probe, GREEDY), timeout=300)]


def test_two_iterations_train_sync_and_checkpoint(ray_local, tmp_path, random_init_tiny_model):
    evaluation = ["cluster.eval_every=1", "cluster.eval_limit=2"]
    cfg = load_config(
        None, [*OVERRIDES, *evaluation, f"cluster.output_dir={tmp_path}", "cluster.run_name=e2e"]
    )
    run = tmp_path / "e2e"
    run.mkdir()
    # the random-init build: its varied, unformatted text gets varied judge rewards, so the two
    # iterations have nonzero advantages (the pretrained model's plain descriptions all score alike)
    model_path = str(random_init_tiny_model)
    samples = load_samples(cfg.data.train, cfg.data).samples
    probe = [prompt_request(s, i, "set", seed=i) for i, s in enumerate(samples[:3])]
    metrics_log = MetricsLog(run, tensorboard=True)
    with TrainingCluster(cfg, model_path) as tc:
        before = _greedy(tc.rollout.actors[0], probe)
        state = RunState.start(cfg, samples)
        history = train_loop(cfg, tc, state, RunOutput(run, metrics_log))
        assert tc.rollout.versions(60) == [2, 2]
        assert tc.reward.versions(60) == [2]  # the policy-mode judge follows the policy
        after = [_greedy(actor, probe) for actor in tc.rollout.actors]
        pushed = ray.get(
            [a.weight_checksums.remote() for a in tc.rollout.actors + tc.reward.actors], timeout=120
        )

    assert after[0] == after[1]  # both engines hold the same weights
    assert after[0] != before  # the push really changed what the engines generate
    # Iteration 1 sampled on engines that received the learner's weights: same logprobs (fp32).
    assert history[1]["train/logprob_mismatch_max"] < 1e-4
    assert len(history) == 3  # two iterations, then the held-out evaluation of the final version
    assert [m["eval/policy_version"] for m in history] == [0, 1, 2]
    assert all("eval/emoset:test/accuracy" in m and "eval/A" in m for m in history)
    assert all(m["timing_s/eval"] > 0 for m in history)
    for metrics in history[:2]:
        assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["train/kl"])
        for name in ("accuracy", "format", "coherence", "consistency", "score"):
            assert f"reward/{name}/mean" in metrics
        assert metrics["rollout/unscorable_rate"] == 0.0
        # reflection and scoring are timed apart, in the reward workers
        assert metrics["timing_s/reflect"] > 0 and metrics["timing_s/score"] > 0
        assert "reflection/consistency_yes_rate" in metrics
    assert [
        json.loads(line)["policy_version"] for line in (run / "metrics.jsonl").read_text().splitlines()
    ] == [1, 2, 2]
    dumped = [json.loads(line) for line in (run / "rollouts.jsonl").read_text().splitlines()]
    assert dumped and all(
        d["rewards"] is not None and d["consistency_reflection"] is not None for d in dumped
    )

    # A fresh engine loaded from the saved checkpoint generates what the synced engines generate.
    checkpoint = run / "checkpoints" / "iter_000002"
    loader = partial(load_image, policy=image_policy(cfg.data))
    fresh = (
        ray.remote(RolloutWorker)
        .options(num_cpus=0.4)
        .remote(engine_settings(cfg, str(checkpoint)), GREEDY, loader)
    )
    assert _greedy(fresh, probe) == after[0]
    # every engine that follows the policy holds, tensor by tensor, exactly the learner's saved weights
    saved = ray.get(fresh.weight_checksums.remote(), timeout=120)
    assert all(engine == saved for engine in pushed) and len(saved) > 10
    ray.kill(fresh)
