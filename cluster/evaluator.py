"""Held-out evaluation inside training: every `cluster.eval_every` iterations and after the last.

Runs on the rollout workers (each call's requests split evenly over them) at the current policy
version (before that iteration's update), one sample per prompt with the validation sampling
(temperature 0.6, top_p 0.95 unless `cluster.eval_greedy`), no reflection (METHOD.md §3); lands in metrics.jsonl as
`eval/<dataset>/<accuracy|parse_failure_rate|format_rate>` and `eval/<A^I|A^O|A>`, with its wall time
as `timing_s/eval` (not part of the iteration's `timing_s/iteration`).
"""

from __future__ import annotations

import time

from cluster.config import RunConfig
from cluster.evaluate import evaluate_samples, evaluation_sampling, load_sources
from cluster.session import TrainingCluster
from rewards.evaluation import paper_summary


class Evaluator:
    def __init__(self, cfg: RunConfig, tc: TrainingCluster):
        self.cfg = cfg
        self.tc = tc
        self.every = cfg.cluster.eval_every if cfg.data.eval else 0
        self.datasets = (
            load_sources(cfg.data.eval, cfg.data, limit=cfg.cluster.eval_limit, seed=cfg.cluster.seed)
            if self.every
            else {}
        )
        self.sampling = evaluation_sampling(cfg.cluster.eval_greedy, cfg.rollout.max_new_tokens)
        self.last_version: int | None = None

    def _generate(self, requests, sampling):
        timeout_s = self.cfg.cluster.generate_timeout_s
        return self.tc.rollout.generate_all(requests, sampling, timeout_s, "held-out evaluation")

    def run(self, version: int) -> dict[str, float]:
        start = time.perf_counter()
        results = evaluate_samples(self._generate, self.datasets, prompt_style=self.cfg.data.prompt_style,
                                   sampling=self.sampling, seed=self.cfg.cluster.seed)  # fmt: skip
        self.last_version = version
        metrics: dict[str, float] = {"eval/policy_version": float(version)}
        for name, r in results.items():
            metrics |= {f"eval/{name}/accuracy": r.accuracy, f"eval/{name}/parse_failure_rate": r.parse_failure_rate,
                        f"eval/{name}/format_rate": r.format_rate}  # fmt: skip
        summary = paper_summary(results, in_domain=[next(iter(results))])
        metrics |= {f"eval/{k}": v for k in ("A^I", "A^O", "A") if (v := summary.get(k)) is not None}
        metrics["timing_s/eval"] = time.perf_counter() - start
        return metrics

    def maybe_run(self, iteration: int, version: int) -> dict[str, float]:
        """Before iteration `iteration`'s update, when it is a multiple of eval_every."""
        return self.run(version) if self.every and iteration % self.every == 0 else {}

    def final(self, iterations: int, version: int) -> dict[str, float]:
        """After the last iteration, unless that version was just evaluated."""
        if not self.every or self.last_version == version:
            return {}
        return {"policy_version": float(version)} | self.run(version)
