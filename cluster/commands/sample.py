"""`emo-r3 sample`: one batch of rollouts from the policy with vLLM, scored with every EMO-R3 reward.

The whole pipeline of an iteration but the update, in one process: build (or find) the model, load
the data, sample B prompts x G rollouts, reflect with the policy as its own judge, score, and print a
summary. Writes the scored rollouts to `<output_dir>/<run_name>/sample_rollouts.jsonl`.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

from actors.engine import Engine
from actors.types import Group
from cluster.config import RunConfig
from cluster.data.sample import Sample
from cluster.launch import use_service_env
from cluster.models import resolve_model
from cluster.rundir import run_dir
from cluster.settings import (
    engine_settings,
    group_seed,
    image_loader,
    prompt_request,
    reward_rules,
    rollout_sampling,
)
from cluster.sources import load_samples
from rewards.judge import EngineJudge
from rewards.rules import COMPONENTS
from rewards.scoring import RolloutScore, ScoreItem, score_items


@contextmanager
def _timed(times: dict[str, float], name: str):
    start = time.perf_counter()
    yield
    times[name] = time.perf_counter() - start


def run_sample(cfg: RunConfig) -> int:
    times: dict[str, float] = {}
    with _timed(times, "model"):
        model_path = resolve_model(cfg.model.path)
    with _timed(times, "data"):
        loaded = load_samples(cfg.data.train, cfg.data)
    if not loaded.samples:
        print(f"no usable sample in {cfg.data.train}: skipped {dict(loaded.skipped)}")
        return 1
    rng = random.Random(cfg.cluster.seed)
    batch = rng.sample(loaded.samples, min(cfg.cluster.prompts_per_iteration, len(loaded.samples)))
    with _timed(times, "engine start"):
        use_service_env(cfg.cluster.num_cpus, on_gpu=cfg.rollout.num_gpus_per_worker > 0)
        engine = Engine(engine_settings(cfg, model_path), image_loader(cfg.data))
    requests = [
        prompt_request(s, i, cfg.data.prompt_style, group_seed(cfg.cluster.seed, 0, s.sample_id))
        for i, s in enumerate(batch)
    ]
    with _timed(times, "generate"):
        groups = engine.generate(requests, rollout_sampling(cfg))
    items = [
        ScoreItem(g, s.answer, s.labels, s.image, r.seed)
        for g, s, r in zip(groups, batch, requests, strict=True)
    ]
    judge = EngineJudge(engine, cfg.reward.judge) if cfg.reward.reflection else None
    with _timed(times, "reflect + score"):
        scores = score_items(items, judge, reward_rules(cfg))
    out = run_dir(cfg) / "sample_rollouts.jsonl"
    _dump(out, batch, groups, scores)
    print(_summary(cfg, model_path, loaded, groups, scores, times, out))
    return 0


def _dump(path: Path, batch: list[Sample], groups: list[Group], scores: list[list[RolloutScore]]) -> None:
    with path.open("w") as f:
        for sample, group, group_scores in zip(batch, groups, scores, strict=True):
            for completion, s in zip(group.completions, group_scores, strict=True):
                record = {
                    "sample_id": sample.sample_id,
                    "group_id": group.group_id,
                    "label": sample.answer,
                    "labels": list(sample.labels),
                    "policy_version": group.policy_version,
                    "response": completion.text,
                    "num_tokens": len(completion.token_ids),
                    "coherence_reflection": s.coherence_reflection,
                    "consistency_reflection": s.consistency_reflection,
                    **(
                        {k: getattr(s.rewards, k) for k in COMPONENTS}
                        if s.rewards
                        else {"unscorable": s.error}
                    ),
                }
                f.write(json.dumps(record) + "\n")


def _summary(cfg, model_path, loaded, groups, scores, times, out) -> str:
    flat = [s for group in scores for s in group]
    scored = [s.rewards for s in flat if s.rewards is not None]
    lengths = [len(c.token_ids) for g in groups for c in g.completions]
    lines = [
        f"EMO-R3 sample: {len(groups)} prompts x {cfg.rollout.group_size} rollouts, policy {model_path}",
        f"data: {len(loaded.samples)} usable samples in {cfg.data.train}, skipped {dict(loaded.skipped) or 0}",
        "",
        f"{'reward':<14}{'mean':>8}{'std':>8}",
    ]
    for name in COMPONENTS:
        values = [getattr(r, name) for r in scored] or [float("nan")]
        std = statistics.pstdev(values) if len(values) > 1 else 0.0
        lines.append(f"{name:<14}{statistics.fmean(values):>8.3f}{std:>8.3f}")
    lines += [
        f"{'unscorable':<14}{1 - len(scored) / max(len(flat), 1):>8.3f}",
        f"completion tokens: mean {statistics.fmean(lengths):.1f}, max {max(lengths)}; "
        f"{sum(lengths) / times['generate']:.0f} tokens/s",
        "",
        f"{'stage':<18}{'seconds':>8}",
        *(f"{name:<18}{seconds:>8.2f}" for name, seconds in times.items()),
        "",
        f"rollouts written to {out}",
    ]
    return "\n".join(lines)
