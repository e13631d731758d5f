"""`emo-r3 bench loop`: the training loop's costs on the embedded default, measured side by side.

Prints (and writes as JSON) the measurements of the sections asked for (`--sections`, default all),
each comparison made in one run on this machine:
- stages: per-stage seconds of short training runs with each role on cores of its own (rollout
  engine core 0, judge engine core 1, learner both, as each role owns its GPUs on a cluster): with
  the Reflective Emotional Reward vs without (streaming target: within 1.10x), and full-sequence
  forwards vs each distinct prompt once (`learner.share_prompts`);
- async: trained tokens per second of the synchronous loop vs `cluster.max_staleness` 1 and 2, the
  producers (rollout + judge engines) on core 0 and the learner on core 1 (target: k = 1 at least
  1.5x the synchronous throughput);
- raw: rollout tokens/s of a rollout worker (Ray actor + engine wrapper) vs raw `vllm.LLM.generate`
  on the same prompts and sampling settings;
- push: weight push time to 1, 2 and 4 engines through the object store;
plus the peak system memory in use (MemTotal - MemAvailable) while it ran.
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


# Each role on cores of its own, as on a cluster where each owns its GPUs (a 2-core machine: the two
# engines one core each, the learner, which runs alone in the synchronous loop, both).
OWN_CORES = [
    "cluster.cpu_affinity.rollout=0",
    "cluster.cpu_affinity.reward=1",
    "cluster.cpu_affinity.learner=0-1",
]
# The asynchronous comparison: production (rollout + judge engines) on core 0, the learner on core 1.
SPLIT_CORES = [
    "cluster.cpu_affinity.rollout=0",
    "cluster.cpu_affinity.reward=0",
    "cluster.cpu_affinity.learner=1",
]

# The stage variants, each on a fresh cluster: the reflection ratio compares the first with the
# second; the prompt-sharing ratio, of the train stage, the third with the first (every rollout's
# prompt run in its own sequence).
VARIANTS = {
    "with_reflection": [*OWN_CORES, "reward.reflection=true"],
    "without_reflection": [*OWN_CORES, "reward.reflection=false"],
    "full_prompts": [*OWN_CORES, "reward.reflection=true", "learner.share_prompts=false"],
}
ASYNC_VARIANTS = {
    "synchronous": [*SPLIT_CORES, "cluster.max_staleness=0"],
    "max_staleness_1": [*SPLIT_CORES, "cluster.max_staleness=1"],
    "max_staleness_2": [*SPLIT_CORES, "cluster.max_staleness=2"],
}
REFLECTION_TARGET = 1.10
ASYNC_TARGET = 1.5
SECTIONS = ("stages", "async", "raw", "push")


def _variant_runs(
    variants: dict[str, list[str]], overrides: list[str], iterations: int, cool_down: int = 0
) -> dict[str, list[dict]]:
    """Each variant's measured iterations (after one warm-up, before `cool_down` more), each on a
    fresh cluster."""
    out = {}
    for name, variant in variants.items():
        cfg = load_config(
            None,
            [
                *BASE,
                *overrides,
                f"cluster.iterations={iterations + 1 + cool_down}",
                *variant,
                f"cluster.run_name=bench-{name}",
            ],
        )
        out[name] = _loop(cfg, iterations + cool_down)[:iterations]
    return out


def stage_times(overrides: list[str], iterations: int) -> dict[str, dict[str, float]]:
    """Mean per-stage seconds of each of VARIANTS."""
    out = {}
    for name, history in _variant_runs(VARIANTS, overrides, iterations).items():
        keys = [k for k in history[0] if k.startswith("timing_s/") or k == "throughput/rollout_tokens_per_s"]
        out[name] = {k: statistics.fmean(m[k] for m in history) for k in keys}
    return out


def async_throughput(overrides: list[str], iterations: int) -> dict[str, dict[str, float]]:
    """Wall time and trained tokens/s of the measured iterations of each of ASYNC_VARIANTS."""
    out = {}
    # the last iteration of an asynchronous run has no next production to wait for: not measured
    for name, history in _variant_runs(ASYNC_VARIANTS, overrides, iterations, cool_down=1).items():
        wall = sum(m["timing_s/iteration"] for m in history)
        tokens = sum(m["throughput/trained_tokens_per_s"] * m["timing_s/iteration"] for m in history)
        out[name] = {
            "wall_s": wall,
            "trained_tokens_per_s": tokens / wall,
            "timing_s/train": statistics.fmean(m["timing_s/train"] for m in history),
            "timing_s/wait_rollouts": statistics.fmean(m.get("timing_s/wait_rollouts", 0.0) for m in history),
            "staleness_mean": statistics.fmean(m.get("async/staleness_mean", 0.0) for m in history),
        }
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


def run(
    overrides: list[str], iterations: int, out: Path | None, sections: tuple[str, ...] = SECTIONS
) -> dict:
    memory = PeakMemory()
    started = time.perf_counter()
    result: dict = {}
    if "stages" in sections:
        s = result["stages"] = stage_times(overrides, iterations)
        iteration_s = {name: stages["timing_s/iteration"] for name, stages in s.items()}
        result["reflection_ratio"] = iteration_s["with_reflection"] / iteration_s["without_reflection"]
        train_s = {name: stages["timing_s/train"] for name, stages in s.items()}
        result["prompt_sharing_ratio"] = train_s["full_prompts"] / train_s["with_reflection"]
    if "async" in sections:
        a = result["async"] = async_throughput(overrides, iterations)
        base = a["synchronous"]["trained_tokens_per_s"]
        result["async_ratios"] = {name: v["trained_tokens_per_s"] / base for name, v in a.items()}
    if "raw" in sections:
        result["rollout_vs_raw_vllm"] = rollout_vs_raw(overrides)
    if "push" in sections:
        result["weight_push_s"] = push_times(overrides)
    result["peak_memory_gb"] = memory.stop()
    result["wall_s"] = time.perf_counter() - started
    print(format_result(result))
    if out is not None:
        out.write_text(json.dumps(result, indent=2))
    return result


def _table(columns: dict[str, dict[str, float]], header: str) -> list[str]:
    first = next(iter(columns.values()))
    lines = [
        f"| {header} | " + " | ".join(n.replace("_", " ") for n in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for key in first:
        lines.append(f"| {key} | " + " | ".join(f"{c[key]:.2f}" for c in columns.values()) + " |")
    return lines


def format_result(r: dict) -> str:
    lines: list[str] = []
    if "stages" in r:
        lines += _table(r["stages"], "stage (s, mean per iteration)") + [
            "",
            f"iteration time, with / without reflection: {r['reflection_ratio']:.2f}x "
            f"(target <= {REFLECTION_TARGET:.2f}x: {'met' if r['reflection_ratio'] <= REFLECTION_TARGET else 'NOT met'})",
            f"train time, full-sequence forwards / each distinct prompt once: {r['prompt_sharing_ratio']:.2f}x",
            "",
        ]
    if "async" in r:
        lines += _table(r["async"], "asynchronous mode (measured iterations)") + [""]
        for name, ratio in r["async_ratios"].items():
            if name != "synchronous":
                verdict = f" (target >= {ASYNC_TARGET:.1f}x: {'met' if ratio >= ASYNC_TARGET else 'NOT met'})"
                lines.append(
                    f"trained tokens/s, {name.replace('_', ' ')} / synchronous: {ratio:.2f}x"
                    + (verdict if name == "max_staleness_1" else "")
                )
        lines.append("")
    if "rollout_vs_raw_vllm" in r:
        raw = r["rollout_vs_raw_vllm"]
        lines.append(
            f"rollout worker {raw['worker_tokens_per_s']:.0f} tok/s vs raw vllm.LLM.generate "
            f"{raw['raw_tokens_per_s']:.0f} tok/s: ratio {raw['ratio']:.2f}"
        )
    if "weight_push_s" in r:
        lines.append(
            "weight push: "
            + ", ".join(f"{k.replace('_', ' ')} {v:.3f} s" for k, v in r["weight_push_s"].items())
        )
    lines.append(
        f"peak system memory in use: {r['peak_memory_gb']:.1f} GB; benchmark wall time {r['wall_s']:.0f} s"
    )
    return "\n".join(lines)
