"""Policy steps on DeepSpeed (CPU, gloo) with a token budget: two ranks that need different
numbers of micro-batches agree on one (the shorter pads with a micro-batch without tokens), the
chunked head and gradient checkpointing run under ZeRO-2 and under ZeRO-3's partitioned weights, and
each step applies exactly the global token-mean gradient of plain autograd, once, whatever the count.

Each rank is a process of its own (torch.distributed is process-global), running `run_rank`: what
learner.rank does with `learner.micro_batch_tokens`.
"""

import json
import math
import os
import pickle
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tiny_inputs import CORPUS, LOOPBACK, free_port, png

from cluster.data.images import load_image
from learner.batch import TrainRollout, collate, num_completion_tokens, split

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BUDGET = 400  # padded tokens per micro-batch: sequences are ~40-110 tokens, 1-6 rows fit
LR = 1e-3


def engine_prompt_ids(processor, image, text):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    rendered = processor.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return processor(text=[rendered], images=[load_image(image)], return_tensors="pt")["input_ids"][
        0
    ].tolist()


def rollouts(processor, groups_and_lengths, seed):
    """Rollouts with images: (group, completion length) each, groups 0-2 with prompts of 45, 35 and 37
    tokens, advantages of both signs."""
    gen = torch.Generator().manual_seed(seed)
    images = [png((200, 30, 30), 112), png((30, 30, 200), 56), png((240, 200, 20), 84)]
    prompts = [engine_prompt_ids(processor, image, CORPUS[i]) for i, image in enumerate(images)]
    out = []
    for i, (group, length) in enumerate(groups_and_lengths):
        completion = torch.randint(20, 100, (length,), generator=gen).tolist()
        advantage = (-1.0) ** i * (0.5 + i / 10)
        out.append(
            TrainRollout(group, prompts[group], completion, [0.0] * length, advantage, images[group], 0)
        )
    return out


def minibatches(processor):
    """Two mini-batches, split over 2 ranks. Sequences (prompt + completion) under the 400-token budget:
    update 0: rank 0 [195, 195 | 195, 65 | 65] needs 3 micro-batches, rank 1 (5 × ~66) needs 1 and
    halves its part twice; update 1: rank 0 [215 | 215 | 215 | 215] needs 4, rank 1 has 3 rollouts and
    pads with a micro-batch without tokens."""
    first = [(0, 150), (0, 150), (0, 150), (0, 20), (0, 20), (1, 30), (1, 30), (2, 30), (2, 28), (2, 30)]
    second = [(0, 170), (0, 170), (0, 170), (0, 170), (1, 25), (2, 33), (2, 29)]
    return [rollouts(processor, first, seed=0), rollouts(processor, second, seed=1)]


def run_rank(model_path, stage, rank, port, shards_file, out_file):
    """One rank: per mini-batch, its shard cut by the token budget into the count every rank agrees on,
    old logprobs from the weights before the update, one train_step; the metrics to `out_file`."""
    from learner.batch import token_budget_split, without_tokens
    from learner.config import LearnerConfig
    from learner.policy import Policy, load_processor
    from learner.rank import set_distributed_env

    set_distributed_env(rank, 2, LOOPBACK, port)
    cfg = LearnerConfig(
        zero_stage=stage,
        micro_batch_tokens=BUDGET,
        logprob_chunk_tokens=16,
        gradient_checkpointing=True,
        share_prompts=True,
        kl_coef=0.0,
        tis_cap=None,  # the synthetic rollouts have no sampler logprobs to correct toward
        weight_decay=0.0,
        lr=LR,
        warmup_steps=4,
    )
    policy = Policy(model_path, cfg, rank=rank, world_size=2, total_micro_batches_per_step=1)
    processor = load_processor(model_path)
    results = []
    for shard, global_tokens in pickle.loads(Path(shards_file).read_bytes())[rank]:
        needed = len(token_budget_split(shard, BUDGET))
        count = policy.common_micro_batch_count(needed)
        parts = token_budget_split(shard, BUDGET, min_parts=min(count, len(shard)))
        batches = [collate(part, processor, load_image, share_prompts=True) for part in parts]
        batches += [without_tokens(batches[-1])] * (count - len(batches))
        batches = [replace(b, old_logprobs=policy.logprobs(b)) for b in batches]
        metrics = policy.train_step(batches, global_tokens)
        results.append({"needed": needed, "count": count, "rows": len(shard), **metrics})
    Path(out_file).write_text(json.dumps(results))


def reference_steps(model_path, processor, minibatches):
    """(loss, ‖∇‖, lr) of each update with plain autograd and the full-logits loss: AdamW on the
    global token-mean GRPO loss (ratio 1 at each update's weights), clipped as DeepSpeed clips."""
    from transformers import AutoModelForImageTextToText

    from learner.batch import completion_logits
    from learner.grpo import GrpoLossConfig, grpo_loss, token_logprobs
    from learner.policy import warmup_factor

    model = AutoModelForImageTextToText.from_pretrained(str(model_path), dtype=torch.float32).eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    out = []
    for step, rollouts in enumerate(minibatches):
        batch = collate(rollouts, processor, load_image)
        logits = completion_logits(model(**batch.model_inputs()).logits, batch)
        logprobs = token_logprobs(logits, batch.completion_ids)
        loss, _ = grpo_loss(
            logprobs,
            logprobs.detach(),
            None,
            batch.advantages,
            batch.mask,
            batch.num_tokens,
            GrpoLossConfig(),
        )
        optimizer.zero_grad()
        loss.backward()
        norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        lr = LR * warmup_factor(4, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        out.append((loss.item(), norm, lr))
    return out


@pytest.mark.parametrize("stage", [2, 3])
def test_ranks_agree_on_token_budget_micro_batches_and_step_once_with_the_global_gradient(
    model_path, tmp_path, stage
):
    from learner.policy import load_processor

    processor = load_processor(model_path)
    updates = minibatches(processor)
    shards = [
        [(shard, num_completion_tokens(mb)) for mb in updates for shard in [split(mb, 2)[rank]]]
        for rank in (0, 1)
    ]
    shards_file = tmp_path / "shards.pickle"
    shards_file.write_bytes(pickle.dumps(shards))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(Path(__file__).parent)])}
    ranks = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"from test_policy_steps import run_rank; run_rank({str(model_path)!r}, {stage}, {rank}, {port}, "
                f"{str(shards_file)!r}, {str(tmp_path / f'rank{rank}.json')!r})",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    logs = [rank.communicate(timeout=600)[0] for rank in ranks]
    assert all(rank.returncode == 0 for rank in ranks), "\n".join(log[-3000:] for log in logs)
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]

    reference = reference_steps(model_path, processor, updates)
    for step, (loss, norm, lr) in enumerate(reference):
        first, second = (r[step] for r in results)
        assert first["count"] == second["count"] == max(first["needed"], second["needed"])
        print(
            f"step {step}: needed {first['needed']} and {second['needed']} micro-batches, ran {first['count']}"
        )
        assert first["lr"] == second["lr"] == pytest.approx(lr)  # one scheduler step per train_step
        assert first["grad_norm"] == pytest.approx(norm, rel=1e-4)
        assert first["loss"] + second["loss"] == pytest.approx(loss, rel=1e-4, abs=1e-6)
        assert math.isfinite(first["entropy"] + second["entropy"])
    # what the mini-batches were built for: the ranks disagree, rank 1 halves (update 0) and pads (update 1)
    assert [(r[0]["needed"], r[0]["count"], r[1]["needed"], r[1]["count"]) for r in results] == [
        (3, 3, 4, 4),
        (1, 3, 1, 4),
    ]
    assert results[1][1]["rows"] == 3
