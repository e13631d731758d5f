"""`emo-r3 sft` on the real stack: DeepSpeed learner ranks in Ray actors lower the NLL, and the
checkpoint loads in transformers and in vLLM, whose prompt ids equal the SFT examples' prompt ids."""

from __future__ import annotations

import json
from functools import partial

import pytest
import ray
import torch

from actors.config import RolloutConfig
from actors.engine import Engine, EngineSettings
from actors.types import PromptRequest, SamplingSettings
from cluster.cold_start import build_examples
from cluster.commands.sft import (
    METRICS_FILE,
    learner_ranks,
    run_sft,
    scene_pairs,
    schedule,
    sft_learner_config,
    sft_samples,
)
from cluster.config import ConfigError, load_config
from cluster.data.images import load_image
from cluster.models import resolve_model
from cluster.settings import image_policy
from learner.batch import collate, completion_logits, num_completion_tokens
from learner.config import SftConfig
from learner.grpo import token_logprobs
from learner.policy import load_processor
from learner.rank import combine_rank_metrics
from learner.sft import SftExample, check_vision_alignment, nll_loss, prompt_token_ids, rank_shards
from rewards.prompts import build_user_text

SMALL_DATA = ["data.synthetic.n_train=32", "data.synthetic.n_test=8"]


@pytest.mark.slow
def test_sft_lowers_the_loss_and_writes_a_checkpoint_transformers_and_vllm_load(ray_local, tmp_path, capsys):
    overrides = [
        *SMALL_DATA,
        "sft.samples=16",
        "sft.epochs=3",
        "sft.scene_examples=0",  # every epoch sees the same examples: their loss must fall
        "learner.num_ranks=1",
        "learner.micro_batch_size=8",
    ]
    cfg = load_config(None, [*overrides, f"cluster.output_dir={tmp_path}", "cluster.run_name=cold"])
    assert run_sft(cfg) == 0
    checkpoint = tmp_path / "cold" / "sft"
    assert f"SFT checkpoint: {checkpoint}" in capsys.readouterr().out

    history = [json.loads(line) for line in (checkpoint / METRICS_FILE).read_text().splitlines()]
    assert len(history) == 3 * 2  # 16 answers + 8 reflections = 24 examples → 2 steps of 16 per epoch
    losses = [sum(h["loss"] for h in history if h["epoch"] == e) / 2 for e in (0, 2)]
    assert losses[1] < losses[0], f"mean loss of epochs 0 and 2: {losses}"

    from transformers import AutoModelForImageTextToText

    assert AutoModelForImageTextToText.from_pretrained(str(checkpoint)).config.model_type == "qwen2_5_vl"
    sample = sft_samples(cfg)[0]
    loader = partial(load_image, policy=image_policy(cfg.data))
    user_text = build_user_text(sample.question, "set")
    engine = (
        ray.remote(Engine)
        .options(num_cpus=0.5)
        .remote(EngineSettings.from_rollout(RolloutConfig(kv_cache_mib=64), str(checkpoint)), loader)
    )
    try:
        request = PromptRequest(0, user_text, sample.image, seed=0)
        (group,) = ray.get(
            engine.generate.remote([request], SamplingSettings(temperature=0.0, max_new_tokens=16))
        )
    finally:
        ray.kill(engine)
    assert len(group.completions[0].token_ids) > 0
    # the SFT prompt is exactly what the engine sees (image placeholders expanded the same way)
    assert tuple(group.prompt_token_ids) == prompt_token_ids(
        load_processor(checkpoint), user_text, sample.image, loader
    )


def test_sft_samples_skip_those_without_a_response_and_fail_clearly_when_none_has_one(tmp_path):
    cfg = load_config(None, [*SMALL_DATA, "sft.samples=64"])
    assert len(sft_samples(cfg)) == 32  # every synthetic sample has a reference response
    missing = load_config(None, [*SMALL_DATA, "sft.target=no_such_column"])
    with pytest.raises(ValueError, match="no_such_column"):
        sft_samples(missing)


def scenes_of(overrides):
    cfg = load_config(None, [*SMALL_DATA, "sft.samples=8", *overrides])
    usable = sft_samples(cfg.model_copy(update={"sft": cfg.sft.model_copy(update={"samples": 10**6})}))
    subset = sft_samples(cfg)
    return subset, scene_pairs(cfg, usable, subset)


def test_scene_examples_are_other_samples_new_each_epoch_cut_after_their_step_1(capsys):
    subset, pairs = scenes_of(["sft.scene_examples=4", "sft.epochs=3"])
    assert len(pairs) == 4 * 3
    ids = [s.sample_id for s, _ in pairs]
    assert len(set(ids)) == 12 and not set(ids) & {s.sample_id for s in subset}
    for sample, prefix in pairs:
        assert (
            sample.response.startswith(prefix)
            and prefix.startswith("<step1>")
            and prefix.endswith("</step1>")
        )
    assert "4 per epoch from 12 other samples" in capsys.readouterr().out
    _, cycled = scenes_of(["sft.scene_examples=10", "sft.epochs=3"])  # 24 others for 30 slots
    assert len(cycled) == 30 and len({s.sample_id for s, _ in cycled}) == 24
    assert scenes_of(["sft.scene_examples=0"])[1] == []


def test_scene_examples_of_think_targets_end_with_the_set_references_step_1(capsys):
    _, pairs = scenes_of(["data.prompt_style=grpo", "reward.total=grpo", "reward.reflection=false"])
    assert pairs
    for sample, prefix in pairs:
        assert sample.response.startswith(prefix) and prefix.startswith("<think>The scene shows")
    # descriptions read from a column without step 1: none usable, the cold start goes on without
    _, none = scenes_of(["data.columns.response=response_grpo"])
    assert none == [] and "has a usable step 1" in capsys.readouterr().out


def test_every_epoch_has_all_examples_and_its_own_scenes():
    cfg = load_config(None, ["sft.scene_examples=4", "sft.epochs=3", "sft.batch_size=8"])
    example = SftExample("answer", (1, 2), (3,), None)
    scenes = [SftExample("scene", (1, 2), (10 + i,), None) for i in range(12)]
    epochs = schedule([example] * 12, scenes, cfg, micro_batches=1)
    for e, steps in enumerate(epochs):
        targets = [r.completion_token_ids[0] for shards, _ in steps for shard in shards for r in shard]
        assert len(steps) == 2 and targets.count(3) == 12
        assert sorted(t for t in targets if t != 3) == [10 + 4 * e + j for j in range(4)]


def test_sft_batch_must_split_evenly_over_the_ranks():
    cfg = load_config(None, ["sft.batch_size=15", "learner.num_ranks=2", "cluster.num_cpus=4"])
    with pytest.raises(ConfigError, match="sft.batch_size=15"):
        sft_learner_config(cfg)


def reference_nll(model_path, processor, rollouts, loader):
    """Token-mean NLL of the whole mini-batch and the norm of its gradient, plain autograd."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(str(model_path), dtype=torch.float32).eval()
    batch = collate(rollouts, processor, loader)
    logits = completion_logits(model(**batch.model_inputs()).logits, batch)  # [N, T, V]
    loss, _ = nll_loss(token_logprobs(logits, batch.completion_ids), batch.mask, batch.num_tokens)
    loss.backward()
    norm = sum(float(p.grad.double().square().sum()) for p in model.parameters() if p.grad is not None)
    return loss.item(), norm**0.5


@pytest.mark.slow
def test_two_zero3_ranks_apply_exactly_the_global_token_mean_nll_gradient(ray_local):
    cfg = load_config(
        None, [*SMALL_DATA, "learner.num_ranks=2", "learner.zero_stage=3", "learner.micro_batch_size=2"]
    )
    model_path = resolve_model("tiny")
    processor = load_processor(model_path)
    loader = partial(load_image, policy=image_policy(cfg.data))
    sft = SftConfig(reflection_share=1.0)  # 4 samples: 4 answers, 2 coherence (text only), 2 consistency
    examples = build_examples(sft_samples(cfg)[:4], processor, sft, "set", loader)
    minibatch = [e.rollout(i) for i, e in enumerate(examples)]
    shards = rank_shards(minibatch, num_ranks=2, micro_batches=2)  # 2 ranks x 2 micro-batches of 2
    check_vision_alignment(shards, 2)
    tokens = num_completion_tokens(minibatch)
    with learner_ranks(cfg, sft_learner_config(cfg), model_path, 2, loader) as ranks:
        calls = [
            rank.sft_iteration.remote([shard], [tokens]) for rank, shard in zip(ranks, shards, strict=True)
        ]
        metrics = combine_rank_metrics(ray.get(calls, timeout=600))
    loss, norm = reference_nll(model_path, processor, minibatch, loader)
    assert metrics["num_tokens"] == tokens
    assert metrics["loss"] == pytest.approx(loss, rel=1e-5)
    assert metrics["grad_norm"] == pytest.approx(norm, rel=1e-4)
