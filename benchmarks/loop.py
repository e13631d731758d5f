"""`emo-r3 bench loop`: the training loop's costs on the embedded default, measured side by side.

Prints (and writes as JSON) five measurements, each comparison made in one run on this machine:
1. per-stage seconds of a short training run (generate, reward tail, train, sync);
2. rollout tokens/s of a rollout worker (Ray actor + engine wrapper) vs raw `vllm.LLM.generate` on
   the same prompts and sampling settings (ratio);
3. iteration time with the Reflective Emotional Reward vs without (ratio);
4. iteration time with 4-prompt generate calls vs one call per rollout worker (ratio);
5. train time with full-sequence forwards vs each distinct prompt run once (`learner.share_prompts`, ratio);
6. weight push time to 1, 2 and 4 engines;
plus the peak system memory in use (MemTotal − MemAvailable) while it ran.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from pathlib import Path

from cluster.config import RunConfig, load_config

BASE = [
    "cluster.eval_every=0",
    "cluster.dump_rollouts=0",
    "cluster.tensorboard=false",
    "cluster.checkpoint_every=0",
]


class PeakMemory:
    """Samples MemTotal − MemAvailable every 0.2 s in a thread."""

    def __init__(self):
        self.peak_gb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
            used_kb = int(info["MemTotal"].split()[0]) - int(info["MemAvailable"].split()[0])
            self.peak_gb = max(self.peak_gb, used_kb / 2**20)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_gb


def _loop(cfg: RunConfig, iterations: int) -> list[dict]:
    """Run `iterations` iterations (after one warm-up) on a fresh cluster; their metrics."""
    from cluster.metrics import MetricsLog
    from cluster.models import resolve_model
    from cluster.rundir import run_dir
    from cluster.session import TrainingCluster
    from cluster.sources import load_samples
    from cluster.train import RunOutput, RunState, train_loop

    run = run_dir(cfg)
    state = RunState.start(cfg, load_samples(cfg.data.train, cfg.data).samples)
    with TrainingCluster(cfg, resolve_model(cfg.model.path)) as tc:
        history = train_loop(cfg, tc, state, RunOutput(run, MetricsLog(run, False)))
    return history[1:]


# The loop's variants, each on a fresh cluster, each compared with the first: the reflection ratio
# with the second; the chunking ratio with the third (four-prompt generate calls stream groups to the
# reward pool sooner; one call per rollout worker, the default, generates faster); the prompt-sharing
# ratio, of the train stage, with the fourth (every rollout's prompt run in its own sequence).
VARIANTS = {
    "with_reflection": ["reward.reflection=true"],
    "without_reflection": ["reward.reflection=false"],
    "chunks_of_4": ["reward.reflection=true", "rollout.chunk_size=4"],
    "full_prompts": ["reward.reflection=true", "learner.share_prompts=false"],
}


def stage_times(overrides: list[str], iterations: int) -> dict[str, dict[str, float]]:
    """Mean per-stage seconds of each of VARIANTS."""
    out = {}
    for name, variant in VARIANTS.items():
        cfg = load_config(
            None,
            [
                *BASE,
                *overrides,
                f"cluster.iterations={iterations + 1}",
                *variant,
                f"cluster.run_name=bench-{name}",
            ],
        )
        history = _loop(cfg, iterations)
        keys = [k for k in history[0] if k.startswith("timing_s/") or k == "throughput/rollout_tokens_per_s"]
        out[name] = {k: statistics.fmean(m[k] for m in history) for k in keys}
    return out


def rollout_vs_raw(overrides: list[str], repeats: int = 3) -> dict[str, float]:
    """Tokens/s of a rollout worker (through Ray) vs raw vllm.LLM.generate, same prompts and settings."""
    import ray

    from benchmarks.raw import raw_tokens_per_s
    from cluster.models import resolve_model
    from cluster.session import TrainingCluster
    from cluster.settings import prompt_request
    from cluster.sources import load_samples

    cfg = load_config(None, [*BASE, *overrides, "cluster.run_name=bench-raw"])
    samples = load_samples(cfg.data.train, cfg.data).samples[: cfg.cluster.prompts_per_iteration]
    requests = [prompt_request(s, i, cfg.data.prompt_style, seed=i) for i, s in enumerate(samples)]
    model = resolve_model(cfg.model.path)
    with TrainingCluster(cfg, model) as tc:
        actor = tc.rollout.actors[0]
        ray.get(actor.generate.remote(requests))  # warm-up
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            groups = ray.get(actor.generate.remote(requests))
            rates.append(sum(g.num_completion_tokens for g in groups) / (time.perf_counter() - start))
    raw = raw_tokens_per_s(cfg, model, samples, repeats)
    worker = statistics.median(rates)
    return {"worker_tokens_per_s": worker, "raw_tokens_per_s": raw, "ratio": worker / raw}


def push_times(overrides: list[str], repeats: int = 3) -> dict[str, float]:
    """Median seconds of a weight push to 1, 2 and 4 engines."""
    from cluster.models import resolve_model
    from cluster.session import TrainingCluster
    from cluster.transport import ObjectStoreTransport

    cfg = load_config(
        None,
        [
            *BASE,
            *overrides,
            "rollout.num_workers=4",
            "rollout.num_cpus_per_worker=0.25",
            "reward.reflection=false",
            "cluster.run_name=bench-push",
        ],
    )
    out = {}
    with TrainingCluster(cfg, resolve_model(cfg.model.path)) as tc:
        version = 0
        for n in (1, 2, 4):
            transport = ObjectStoreTransport(
                tc.learner, lambda n=n: tc.rollout.actors[:n], cfg.cluster.sync_timeout_s
            )
            times = []
            for _ in range(repeats):
                version += 1
                times.append(transport.push(version)["timing_s/sync"])
            out[f"{n}_engines"] = statistics.median(times)
    return out


def run(overrides: list[str], iterations: int, out: Path | None) -> dict:
    memory = PeakMemory()
    started = time.perf_counter()
    result = {
        "stages": stage_times(overrides, iterations),
        "rollout_vs_raw_vllm": rollout_vs_raw(overrides),
        "weight_push_s": push_times(overrides),
    }
    s = result["stages"]
    iteration_s = {name: stages["timing_s/iteration"] for name, stages in s.items()}
    result["reflection_ratio"] = iteration_s["with_reflection"] / iteration_s["without_reflection"]
    result["chunking_ratio"] = iteration_s["chunks_of_4"] / iteration_s["with_reflection"]
    train_s = {name: stages["timing_s/train"] for name, stages in s.items()}
    result["prompt_sharing_ratio"] = train_s["full_prompts"] / train_s["with_reflection"]
    result["peak_memory_gb"] = memory.stop()
    result["wall_s"] = time.perf_counter() - started
    print(format_result(result))
    if out is not None:
        out.write_text(json.dumps(result, indent=2))
    return result


def format_result(r: dict) -> str:
    s, raw, push = r["stages"], r["rollout_vs_raw_vllm"], r["weight_push_s"]
    lines = [
        "| stage (s, mean per iteration) | " + " | ".join(name.replace("_", " ") for name in s) + " |",
        "|---|" + "---|" * len(s),
    ]
    for key in s["with_reflection"]:
        lines.append(f"| {key} | " + " | ".join(f"{stages[key]:.2f}" for stages in s.values()) + " |")
    lines += [
        "",
        f"iteration time, with / without reflection: {r['reflection_ratio']:.2f}x",
        f"iteration time, 4-prompt generate calls / one call per rollout worker: {r['chunking_ratio']:.2f}x",
        f"train time, full-sequence forwards / each distinct prompt once: {r['prompt_sharing_ratio']:.2f}x",
        f"rollout worker {raw['worker_tokens_per_s']:.0f} tok/s vs raw vllm.LLM.generate {raw['raw_tokens_per_s']:.0f} "
        f"tok/s: ratio {raw['ratio']:.2f}",
        "weight push: " + ", ".join(f"{k.replace('_', ' ')} {v:.3f} s" for k, v in push.items()),
        f"peak system memory in use: {r['peak_memory_gb']:.1f} GB; benchmark wall time {r['wall_s']:.0f} s",
    ]
    return "\n".join(lines)
