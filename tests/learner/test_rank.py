"""LearnerRank on the real stack: updates follow the advantages, two ranks apply exactly the global
token-mean gradient of one, and ZeRO-3's gathered weights reload into vLLM with matching logprobs.

Rollouts come from a real vLLM engine (fp32) in a Ray actor; world-size-1 ranks run in-process,
world-size-2 ranks are two Ray actors (STACK.md §6-7).
"""

import math
import time
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open
from tiny_inputs import CORPUS, LOOPBACK, free_port, png

from actors.types import PromptRequest, SamplingSettings
from cluster.data.images import load_image
from learner.batch import collate, completion_logits, num_completion_tokens, rollouts_from_group, split
from learner.config import LearnerConfig
from learner.grpo import GrpoLossConfig, grpo_loss, token_logprobs
from learner.rank import LearnerRank, RankSpec, combine_rank_metrics

pytestmark = pytest.mark.slow

ADVANTAGES = [1.0, -1.0, 0.5, -0.5]  # one group of G = 4
IMAGES = [((200, 30, 30), 112), ((30, 30, 200), 56), ((240, 200, 20), 84), ((20, 20, 20), 112)]
RPC_TIMEOUT_S = 300
METRICS = {"loss", "pg_loss", "clip_fraction", "entropy", "grad_norm", "logprob_mismatch_mean"}
METRICS |= {"logprob_mismatch_max", "prob_ratio_error", "mismatch_tokens", "num_tokens", "train_s", "lr"}


@pytest.fixture(scope="module")
def ray_cluster(ray_local):
    """The session's local Ray (tests/conftest.py): loopback, worker env of STACK.md §6-7."""
    return ray_local


@pytest.fixture(scope="module")
def engine(ray_cluster, model_path):
    from actors.config import RolloutConfig
    from actors.engine import Engine, EngineSettings

    settings = EngineSettings.from_rollout(RolloutConfig(kv_cache_mib=64), str(model_path))
    actor = ray_cluster.remote(num_cpus=0.5)(Engine).remote(settings, load_image)
    yield actor
    ray_cluster.kill(actor)


def sample(ray, engine, seed):
    """16 real rollouts (4 images × G = 4) with fixed nonzero advantages."""
    images = [png(color, side) for color, side in IMAGES]
    requests = [PromptRequest(i, CORPUS[i], image, seed=seed + i) for i, image in enumerate(images)]
    sampling = SamplingSettings(n=len(ADVANTAGES), max_new_tokens=24)
    groups = ray.get(engine.generate.remote(requests, sampling), timeout=RPC_TIMEOUT_S)
    return [r for g, im in zip(groups, images, strict=True) for r in rollouts_from_group(g, ADVANTAGES, im)]


@pytest.fixture(scope="module")
def rollouts(ray_cluster, engine):
    return sample(ray_cluster, engine, seed=0)


def spawn_ranks(ray, model_path, cfg, world_size, micro_batches_per_step, restore_optimizer=False):
    """world_size LearnerRanks as Ray actors, ready."""
    actor = ray.remote(num_cpus=0.5)(LearnerRank)
    port = free_port()
    specs = [
        RankSpec(
            str(model_path),
            cfg,
            r,
            world_size,
            LOOPBACK,
            port,
            micro_batches_per_step,
            load_image,
            restore_optimizer=restore_optimizer,
        )
        for r in range(world_size)
    ]
    ranks = [actor.remote(spec) for spec in specs]
    assert ray.get([r.ping.remote() for r in ranks], timeout=RPC_TIMEOUT_S) == list(range(world_size))
    return ranks


def train_on_ranks(ray, ranks, minibatches):
    """One train_iteration on every rank (each gets its shard of each mini-batch); combined metrics."""
    tokens = [num_completion_tokens(mb) for mb in minibatches]
    shards = [split(mb, len(ranks)) for mb in minibatches]
    calls = [r.train_iteration.remote([s[i] for s in shards], tokens) for i, r in enumerate(ranks)]
    return combine_rank_metrics(ray.get(calls, timeout=RPC_TIMEOUT_S))


def reference_grad_norm(model_path, processor, rollouts):
    """‖∇ token-mean GRPO loss‖ over the whole mini-batch at the initial weights, plain autograd."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(str(model_path), dtype=torch.float32).eval()
    batch = collate(rollouts, processor, load_image)
    logprobs = token_logprobs(
        completion_logits(model(**batch.model_inputs()).logits, batch), batch.completion_ids
    )
    # ratio 1 and reference == policy at the first update: the KL term has zero gradient
    loss, _ = grpo_loss(
        logprobs, logprobs.detach(), None, batch.advantages, batch.mask, batch.num_tokens, GrpoLossConfig()
    )
    loss.backward()
    return math.sqrt(
        sum(float(p.grad.double().square().sum()) for p in model.parameters() if p.grad is not None)
    )


@pytest.fixture(scope="module")
def first_norm(model_path, rollouts):
    """The gradient norm the first update on rollouts[:8] must apply, whatever the ranks and stage."""
    from learner.policy import load_processor

    return reference_grad_norm(model_path, load_processor(model_path), rollouts[:8])


def max_difference(a, b):
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def test_update_moves_every_part_of_the_model_only_when_advantages_are_nonzero(
    model_path, rollouts, ray_cluster
):
    # Ranks always run in their own process (a Ray actor): torch.distributed is process-global.
    cfg = LearnerConfig(
        zero_stage=2, weight_decay=0.0, kl_coef=0.0, micro_batch_size=4, lr=1e-3, warmup_steps=4
    )
    (rank,) = spawn_ranks(ray_cluster, model_path, cfg, 1, 2)
    minibatch = rollouts[:8]

    def call(method, *args):
        return ray_cluster.get(method.remote(*args), timeout=RPC_TIMEOUT_S)

    before = call(rank.weights)
    silent = [replace(r, advantage=0.0) for r in minibatch]
    metrics = call(rank.train_iteration, [silent], [num_completion_tokens(silent)])
    assert metrics["loss"] == 0.0 and metrics["grad_norm"] == 0.0
    assert metrics["lr"] == pytest.approx(1e-3 / 4)  # warmup: update k of 4 runs at k/4 of lr
    assert max_difference(before, call(rank.weights)) == 0.0
    metrics = call(rank.train_iteration, [minibatch], [num_completion_tokens(minibatch)])
    after = call(rank.weights)
    assert metrics["lr"] == pytest.approx(2e-3 / 4)
    # Adam moves a weight by at most ~lr per step: the applied lr is the warmed-up one, not 1e-3
    assert 1e-4 < max_difference(before, after) <= 2e-3 / 4 * 1.001
    ray_cluster.kill(rank)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("visual.") for k in changed), "the vision tower must train"
    assert {"lm_head.weight", "model.embed_tokens.weight"} <= changed
    assert metrics.keys() >= METRICS and all(math.isfinite(v) for v in metrics.values())
    assert metrics["grad_norm"] > 0 and metrics["num_tokens"] == num_completion_tokens(minibatch)
    assert metrics["logprob_mismatch_max"] < 1e-4  # the engine sampled with these weights


def test_two_ranks_apply_exactly_the_global_token_mean_gradient(
    model_path, rollouts, first_norm, ray_cluster
):
    first, second = rollouts[:8], rollouts[8:]
    (one,) = spawn_ranks(ray_cluster, model_path, LearnerConfig(zero_stage=2, micro_batch_size=4), 1, 2)
    single = [
        train_on_ranks(ray_cluster, [one], [first]),
        train_on_ranks(ray_cluster, [one], [first, second]),
    ]
    one_weights = ray_cluster.get(one.weights.remote(), timeout=RPC_TIMEOUT_S)
    ray_cluster.kill(one)
    assert single[0]["kl"] == pytest.approx(0.0, abs=1e-9)  # the reference is the initial policy
    # two ranks, each with 2 micro-batches of 2: gradient accumulation and rank averaging together
    ranks = spawn_ranks(ray_cluster, model_path, LearnerConfig(zero_stage=2, micro_batch_size=2), 2, 2)
    try:
        double = [
            train_on_ranks(ray_cluster, ranks, [first]),
            train_on_ranks(ray_cluster, ranks, [first, second]),
        ]
        weights = [ray_cluster.get(r.weights.remote(), timeout=RPC_TIMEOUT_S) for r in ranks]
    finally:
        for r in ranks:
            ray_cluster.kill(r)
    assert single[0]["grad_norm"] == pytest.approx(first_norm, rel=1e-5)
    assert double[0]["grad_norm"] == pytest.approx(first_norm, rel=1e-5)
    for a, b in zip(single, double, strict=True):
        for name in ("loss", "pg_loss", "kl", "entropy", "clip_fraction", "grad_norm"):
            assert b[name] == pytest.approx(a[name], rel=1e-4, abs=1e-6), name
    assert double[1]["kl"] > 0 and weights[1] is None
    difference = max_difference(one_weights, weights[0])
    print(f"ZeRO-2 world 2 vs world 1: max |Δweight| {difference:.1e} after 3 updates")
    assert difference < 1e-5


def test_engine_old_logprobs_train_as_the_learner_s_and_the_mismatch_is_still_measured(
    model_path, rollouts, ray_cluster
):
    first, second = rollouts[:8], rollouts[8:]

    def two_updates(source, minibatches):
        cfg = LearnerConfig(zero_stage=2, micro_batch_size=4, old_logprobs=source, lr=1e-3, warmup_steps=0)
        (rank,) = spawn_ranks(ray_cluster, model_path, cfg, 1, 2)
        metrics = train_on_ranks(ray_cluster, [rank], minibatches)
        weights = ray_cluster.get(rank.weights.remote(), timeout=RPC_TIMEOUT_S)
        ray_cluster.kill(rank)
        return metrics, weights

    (learner, learner_weights), (engine, engine_weights) = (
        two_updates(source, [first, second]) for source in ("learner", "engine")
    )
    # the ratios use the sampler's logprobs instead of a learner forward's (equal to ~1e-5): the same
    # updates up to Adam's normalisation of near-zero gradients; two steps move a weight up to 2e-3
    difference = max_difference(learner_weights, engine_weights)
    assert difference < 1e-4
    for name in ("loss", "pg_loss", "kl", "entropy", "clip_fraction", "grad_norm"):
        assert engine[name] == pytest.approx(learner[name], rel=1e-3, abs=1e-6), name
    tokens = [num_completion_tokens(mb) for mb in (first, second)]
    assert learner["mismatch_tokens"] == sum(tokens) == engine["num_tokens"] == learner["num_tokens"]
    assert engine["mismatch_tokens"] == tokens[0]  # the first update's forward: the weights that sampled
    assert engine["logprob_mismatch_max"] < 1e-4

    # an engine that disagrees shows up in the metric (here: one rollout's logprobs off by 0.5)
    off = [x - 0.5 for x in first[0].sampler_logprobs]
    corrupted, corrupted_weights = two_updates(
        "engine", [[replace(first[0], sampler_logprobs=off), *first[1:]], second]
    )
    assert corrupted["logprob_mismatch_max"] == pytest.approx(0.5, abs=1e-3)
    skewed = max_difference(learner_weights, corrupted_weights)
    print(
        f"max |Δweight| after 2 updates, engine vs learner old logprobs: {difference:.1e}; 0.5 off: {skewed:.1e}"
    )
    assert skewed > 10 * difference


@pytest.mark.parametrize(("stage", "world"), [(2, 1), (3, 2)])
def test_a_checkpoint_with_its_optimizer_state_resumes_exactly(
    model_path, rollouts, ray_cluster, tmp_path, stage, world
):
    first, second = rollouts[:8], rollouts[8:]
    cfg = LearnerConfig(zero_stage=stage, micro_batch_size=4 // world, kl_coef=0.0, lr=1e-3, warmup_steps=4)
    checkpoint = str(tmp_path / "checkpoint")

    def update_and_close(ranks):
        """One more update on `first`: its lr and the weights after it."""
        metrics = train_on_ranks(ray_cluster, ranks, [first])
        weights = ray_cluster.get([r.weights.remote() for r in ranks], timeout=RPC_TIMEOUT_S)[0]
        for r in ranks:
            ray_cluster.kill(r)
        return metrics["lr"], weights

    ranks = spawn_ranks(ray_cluster, model_path, cfg, world, 2)
    train_on_ranks(ray_cluster, ranks, [first])
    train_on_ranks(ray_cluster, ranks, [second])
    ray_cluster.get([r.save.remote(checkpoint, True) for r in ranks], timeout=RPC_TIMEOUT_S)
    lr, continued = update_and_close(ranks)

    resumed = spawn_ranks(ray_cluster, checkpoint, cfg, world, 2, restore_optimizer=True)
    notes = ray_cluster.get([r.optimizer_restored.remote() for r in resumed], timeout=RPC_TIMEOUT_S)
    assert all(note.startswith("optimizer state restored") for note in notes), notes
    resumed_lr, after_resume = update_and_close(resumed)
    assert resumed_lr == lr == pytest.approx(3e-3 / 4)  # the third warmup step, not the first
    difference = max_difference(continued, after_resume)
    print(f"ZeRO-{stage} world {world}: resumed vs uninterrupted max |Δweight| {difference:.1e}")
    assert difference == 0.0  # bit for bit: weights, both moments, the step and the lr schedule resumed

    # the same checkpoint without its optimizer state: AdamW and the warmup start over, and it shows
    fresh_lr, after_fresh = update_and_close(spawn_ranks(ray_cluster, checkpoint, cfg, world, 2))
    assert fresh_lr == pytest.approx(1e-3 / 4)
    assert max_difference(continued, after_fresh) > 1e-5


def test_optimizer_state_of_another_world_size_is_not_restored(model_path, ray_cluster, tmp_path):
    cfg = LearnerConfig(zero_stage=2, micro_batch_size=4, kl_coef=0.0)
    (rank,) = spawn_ranks(ray_cluster, model_path, cfg, 1, 2)
    ray_cluster.get(rank.save.remote(str(tmp_path), True), timeout=RPC_TIMEOUT_S)
    ray_cluster.kill(rank)
    assert (tmp_path / "optimizer" / "rank000-of-001.safetensors").is_file()
    two = spawn_ranks(ray_cluster, str(tmp_path), cfg.model_copy(update={"micro_batch_size": 2}), 2, 2, True)
    notes = ray_cluster.get([r.optimizer_restored.remote() for r in two], timeout=RPC_TIMEOUT_S)
    for r in two:
        ray_cluster.kill(r)
    assert all(note.startswith("no optimizer state for 2 rank(s)") for note in notes), notes


def test_zero3_weights_have_checkpoint_names_and_reload_into_vllm(
    model_path, rollouts, first_norm, engine, ray_cluster, tmp_path
):
    with safe_open(str(model_path / "model.safetensors"), "pt") as f:
        checkpoint = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118
    ranks = spawn_ranks(ray_cluster, model_path, LearnerConfig(zero_stage=3, micro_batch_size=4), 2, 1)
    try:
        first = train_on_ranks(ray_cluster, ranks, [rollouts[:8]])
        start = time.perf_counter()
        states = ray_cluster.get([r.weights.remote() for r in ranks], timeout=RPC_TIMEOUT_S)
        gather_s = time.perf_counter() - start
        assert states[1] is None
        assert {name: tuple(t.shape) for name, t in states[0].items()} == checkpoint
        ray_cluster.get(engine.load_weights.remote(list(states[0].items()), 1), timeout=RPC_TIMEOUT_S)
        fresh = sample(ray_cluster, engine, seed=100)
        assert {r.policy_version for r in fresh} == {1}
        metrics = train_on_ranks(ray_cluster, ranks, [fresh[:8]])
        ray_cluster.get([r.save.remote(tmp_path / "checkpoint") for r in ranks], timeout=RPC_TIMEOUT_S)
    finally:
        for r in ranks:
            ray_cluster.kill(r)
    print(
        f"ZeRO-3 gather {gather_s:.3f} s; reloaded logprob mismatch max {metrics['logprob_mismatch_max']:.2e}"
    )
    assert first["grad_norm"] == pytest.approx(first_norm, rel=1e-5) and "kl" in first  # reference on
    assert metrics["logprob_mismatch_max"] < 1e-4
    saved = {p.name for p in (tmp_path / "checkpoint").iterdir()}
    assert {"model.safetensors", "config.json", "chat_template.jinja", "tokenizer.json"} <= saved


def test_two_zero3_ranks_with_a_token_budget_apply_exactly_the_global_token_mean_gradient(
    model_path, rollouts, first_norm, ray_cluster
):
    # 150 padded tokens: two of these rollouts per micro-batch, 2 per rank where DeepSpeed was built for 1
    cfg = LearnerConfig(zero_stage=3, micro_batch_size=4, micro_batch_tokens=150, gradient_checkpointing=True)
    ranks = spawn_ranks(ray_cluster, model_path, cfg, 2, 1)
    try:
        first = train_on_ranks(ray_cluster, ranks, [rollouts[:8]])
    finally:
        for r in ranks:
            ray_cluster.kill(r)
    assert first["grad_norm"] == pytest.approx(first_norm, rel=1e-5)
