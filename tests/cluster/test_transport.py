"""Weight transports on the real stack, in bf16 as on GPUs: after a push every engine that follows the
policy holds the learner's weights tensor by tensor (checksums against an engine loaded from the
learner's checkpoint); the collective group forms anew when an engine was replaced; the object store
stays a working fallback. The bf16 learner's sampler correction is checked on the way."""

from __future__ import annotations

import pytest
import ray

from actors.rollout import RolloutWorker
from cluster.config import load_config
from cluster.session import TrainingCluster
from cluster.settings import engine_settings, image_loader, rollout_sampling
from cluster.sources import load_samples
from cluster.transport import ObjectStoreTransport

pytestmark = pytest.mark.slow

OVERRIDES = [
    "cluster.prompts_per_iteration=4",
    "rollout.group_size=4",
    "rollout.num_workers=2",
    "rollout.num_cpus_per_worker=0.4",
    "learner.num_ranks=2",
    "learner.num_cpus_per_rank=0.4",
    "reward.num_cpus_per_worker=0.2",
    "rollout.max_new_tokens=16",
    "learner.micro_batch_size=4",
    "learner.warmup_steps=0",
    "learner.zero_stage=3",  # ranks gather bucket by bucket (ZeRO-2, the default, is the e2e test's)
    "rollout.dtype=bfloat16",  # bf16 end to end, as on GPUs: the sampler correction is active
    "learner.dtype=bfloat16",
    "cluster.weight_bucket_mib=0.5",  # many buckets for a 5 M-parameter model
]


def _checksums(actors) -> list[dict[str, float]]:
    return ray.get([a.weight_checksums.remote() for a in actors], timeout=300)


def _saved_checksums(tc, cfg, out) -> dict[str, float]:
    """The learner's weights as an engine sees them: saved to `out`, loaded by a fresh engine."""
    tc.save(out, optimizer=False)
    engine = (
        ray.remote(RolloutWorker)
        .options(num_cpus=0.1)
        .remote(engine_settings(cfg, str(out)), rollout_sampling(cfg), image_loader(cfg.data))
    )
    try:
        return _checksums([engine])[0]
    finally:
        ray.kill(engine)


def test_collective_pushes_reach_every_engine_and_the_group_reforms_after_a_replacement(
    ray_local, tmp_path, random_init_tiny_model
):
    cfg = load_config(None, [*OVERRIDES, f"cluster.output_dir={tmp_path}"])
    assert cfg.cluster.weight_transport == "collective"  # the default
    samples = load_samples(cfg.data.train, cfg.data).samples
    with TrainingCluster(cfg, str(random_init_tiny_model)) as tc:
        trained = tc.train(tc.generate_and_score(samples[:4], 0, 0))  # the learner's weights move
        # bf16: the ratio's old logprobs are the learner's, corrected toward the sampler's
        assert 0 < trained["train/logprob_mismatch_mean"] < 0.1, trained
        assert 1.0 <= trained["train/tis_weight_max"] <= cfg.learner.tis_cap
        assert 0.8 < trained["train/tis_weight_mean"] < 1.2 and 0 <= trained["train/tis_clipped_share"] < 0.05
        first = tc.push(1)
        expected = _saved_checksums(tc, cfg, tmp_path / "v1")
        assert first["timing_s/sync_group"] > 0 and first["sync/receivers"] == 3  # 2 engines + the judge
        assert all(c == expected for c in _checksums(tc.receivers())) and len(expected) > 10

        # a rollout engine replaced by a fresh one at the initial weights: the next push forms a new group
        tc.rollout.slots.replace(1, "was replaced by the test")  # killed; a fresh actor in its bundle
        assert _checksums([tc.rollout.actors[1]])[0] != expected
        again = tc.push(2)
        assert again["timing_s/sync_group"] > 0  # the group was formed anew
        assert all(c == expected for c in _checksums(tc.receivers()))
        assert tc.rollout.versions(60) == [2, 2]
        assert tc.push(3)["timing_s/sync_group"] == 0  # the same members: the group is kept

        # the object store: the fallback transport, on the same engines
        tc.train(tc.generate_and_score(samples[4:8], 1, 3))
        store = ObjectStoreTransport(tc.learner, tc.receivers, cfg.cluster.sync_timeout_s)
        store.push(4)
        expected_v4 = _saved_checksums(tc, cfg, tmp_path / "v4")
        assert expected_v4 != expected
        assert all(c == expected_v4 for c in _checksums(tc.receivers()))
        assert tc.generate_and_score(
            samples[:2], 9, 4
        ).groups  # the engines generate after every kind of push
