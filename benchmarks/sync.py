"""`emo-r3 bench sync`: weight-push seconds and peak extra memory against model size × engines ×
transport, beside the floor measured in the same run: a raw `torch.distributed` broadcast of the same
bucket bytes over the same group (no gathering, packing or loading).

Models are random-initialised Qwen2.5-VL-architecture models built offline (the embedded tiny model's
tokenizer, processor and vision tower; the text stack grown), saved in bfloat16, the dtype GPU users
push. One cluster per size: a learner rank (ZeRO-2, bf16) and four rollout engines; each transport
pushes to the first 1, 2 and 4 of them. Peak extra memory is a process's peak resident memory during
the push minus its resident memory before it (Linux's VmHWM, reset before each push): on learner
rank 0, on the engine's process (vLLM's engine core, where the model is) and on the engine's Ray
actor (the object-store transport deserialises a full copy there). On a 2-core machine every
process shares the same cores, so engines added to a push slow each other down; on a cluster each
owns its GPU.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from cluster.embedded.tiny_model import TinyModelSpec

ENGINES = (1, 2, 4)
TRANSPORTS = ("object_store", "collective")


def _text_stack(hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int) -> TinyModelSpec:
    """The tiny model with a larger text stack (head_dim 64: a vLLM CPU size), saved in bf16."""
    return TinyModelSpec(
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        intermediate_size=intermediate,
        mrope_section=(8, 12, 12),
        dtype="bfloat16",
    )


# text stacks of about 5 M, 60 M, 150 M, 360 M (Qwen2-0.5B's shape) and 500 M parameters
SIZES = {
    "5m": TinyModelSpec(dtype="bfloat16"),
    "60m": _text_stack(512, 16, 8, 4, 2048),
    "150m": _text_stack(768, 18, 12, 4, 3072),
    "360m": _text_stack(896, 24, 14, 2, 4864),
    "500m": _text_stack(1024, 32, 16, 4, 4096),
}
BASE = [
    "cluster.eval_every=0",
    "cluster.dump_rollouts=0",
    "cluster.tensorboard=false",
    "cluster.checkpoint_every=0",
    "cluster.run_name=bench-sync",
    "reward.reflection=false",  # no judge engine: the four rollout engines are the receivers
    "rollout.num_workers=4",
    "rollout.num_cpus_per_worker=0.25",
    "rollout.dtype=bfloat16",
    "rollout.kv_cache_mib=64",
    "rollout.max_model_len=512",
    "learner.dtype=bfloat16",
    "learner.kl_coef=0",  # no reference copy on the learner
]


@dataclass
class Cell:
    """One (size, engines, transport) measurement: medians over the repeats."""

    size: str
    parameters: int
    engines: int
    transport: str
    push_s: float
    learner_extra_mib: float
    engine_extra_mib: float
    actor_extra_mib: float


def bench_model(size: str) -> Path:
    """The random-initialised model of `size`, built into the project cache once."""
    from cluster.embedded.corpus import tiny_corpus
    from cluster.embedded.tiny_model import ensure_tiny_model
    from cluster.paths import cache_dir

    return ensure_tiny_model(cache_dir() / "models", tiny_corpus(), SIZES[size])


def _parameters(model: Path) -> int:
    import math

    from safetensors import safe_open

    total = 0
    for path in model.glob("*.safetensors"):
        with safe_open(path, "pt") as f:
            total += sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())  # noqa: SIM118
    return total


def _extra(before: dict, after: dict) -> float:
    return after["peak"] - before["rss"]


def _timed_push(tc, transport, receivers: list, version: int) -> tuple[float, float, float, float]:
    """One push: seconds, and the peak extra MiB of learner rank 0, of the worst engine process and
    of the worst engine actor."""
    import ray

    rank0 = tc.learner.ranks[0]
    learner_before = ray.get(rank0.process_memory.remote(True), timeout=60)
    engines_before = ray.get([a.process_memory.remote(True) for a in receivers], timeout=60)
    seconds = transport.push(version)["timing_s/sync"]
    learner_after = ray.get(rank0.process_memory.remote(), timeout=60)
    engines_after = ray.get([a.process_memory.remote() for a in receivers], timeout=60)
    engine = max(_extra(b["engine"], a["engine"]) for b, a in zip(engines_before, engines_after, strict=True))
    actor = max(_extra(b["actor"], a["actor"]) for b, a in zip(engines_before, engines_after, strict=True))
    return seconds, _extra(learner_before, learner_after), engine, actor


def _floor(tc, transport, receivers: list, repeats: int) -> float:
    """Median seconds of a raw broadcast of the push's bucket bytes over the group just used."""
    from actors.collective import bucket_sizes
    from cluster.placement import wait_all

    sizes = bucket_sizes(transport.metadata)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        refs = [tc.learner.ranks[0].send_raw.remote(sizes)] + [a.receive_raw.remote(sizes) for a in receivers]
        wait_all(refs, 600, "raw broadcast")
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_size(
    size: str, engines: tuple[int, ...], transports: tuple[str, ...], bucket_mib: float, repeats: int
) -> dict:
    """Every (engines, transport) cell of one model size, and the floor per engine count."""
    from cluster.config import load_config
    from cluster.session import TrainingCluster
    from cluster.transport import make_transport

    model = bench_model(size)
    parameters = _parameters(model)
    cfg = load_config(None, [*BASE, f"model.path={model}", f"cluster.weight_bucket_mib={bucket_mib}"])
    cells, floors, version = [], {}, 0
    with TrainingCluster(cfg, str(model)) as tc:
        for n in engines:
            receivers = tc.rollout.actors[:n]
            for kind in transports:
                transport = make_transport(
                    kind, tc.learner, lambda r=receivers: r, 600, bucket_mib, "gloo", tc.weight_group_address
                )
                version += 1
                transport.push(version)  # warm-up (and, collective: the group forms)
                runs = []
                for _ in range(repeats):
                    version += 1
                    runs.append(_timed_push(tc, transport, receivers, version))
                medians = [statistics.median(column) for column in zip(*runs, strict=True)]
                cells.append(Cell(size, parameters, n, kind, *medians))
                if kind == "collective":
                    floors[n] = _floor(tc, transport, receivers, repeats)
    return {"cells": cells, "floors": floors, "parameters": parameters}


def _speed(cell: Cell | None, floor: float) -> str:
    return "– | –" if cell is None else f"{cell.push_s:.3f} | {cell.push_s / floor:.2f}"


def _memory(cell: Cell | None) -> str:
    if cell is None:
        return "not run"
    return f"{cell.learner_extra_mib:.0f} / {cell.engine_extra_mib:.0f} / {cell.actor_extra_mib:.0f}"


def table(results: list[dict], bucket_mib: float) -> str:
    """The printed table: one row per (size, engines), both transports beside the floor."""
    lines = [
        f"bucket {bucket_mib:g} MiB; extra MiB = peak resident during the push − resident before "
        "(learner rank 0 / worst engine process / worst engine actor)",
        "| size | params | engines | raw broadcast s | collective s | × floor | object_store s | × floor "
        "| collective extra MiB | object_store extra MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for result in results:
        by = {(c.engines, c.transport): c for c in result["cells"]}
        for n, floor in result["floors"].items():
            col, obj = by[(n, "collective")], by.get((n, "object_store"))
            lines.append(
                f"| {col.size} | {col.parameters / 1e6:.1f} M | {n} | {floor:.3f} | {_speed(col, floor)} | "
                f"{_speed(obj, floor)} | {_memory(col)} | {_memory(obj)} |"
            )
    return "\n".join(lines)


def run(
    sizes: list[str],
    engines: tuple[int, ...] = ENGINES,
    transports: tuple[str, ...] = TRANSPORTS,
    bucket_mib: float = 64,
    repeats: int = 3,
    out: Path | None = None,
) -> list[dict]:
    """Measure each size in turn (smallest first) and print the table as it grows. The collective
    transport is always measured: the floor is a broadcast over its group."""
    transports = tuple(dict.fromkeys(("collective", *transports)))
    results = []
    for size in sizes:
        if size not in SIZES:
            raise ValueError(f"size {size!r}: use one of {', '.join(SIZES)}")
        results.append(measure_size(size, engines, transports, bucket_mib, repeats))
        print(table(results, bucket_mib), flush=True)
        largest = results[-1]
        print(
            f"target at {size}: collective within 1.3x of the raw broadcast; learner rank 0's extra at "
            f"most two buckets ({2 * bucket_mib:g} MiB): "
            + ", ".join(
                f"{c.engines} engines {c.push_s / largest['floors'][c.engines]:.2f}x, {c.learner_extra_mib:.0f} MiB"
                for c in largest["cells"]
                if c.transport == "collective"
            ),
            flush=True,
        )
    if out is not None:
        rows = [
            {**vars(c), "floor_s": r["floors"][c.engines]} for r in results for c in r["cells"]
        ]  # one JSON row per cell
        out.write_text(json.dumps({"bucket_mib": bucket_mib, "cells": rows}, indent=2))
    return results
