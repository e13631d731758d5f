"""Pinning a role's processes to its cores on CPU runs (cluster.cpu_affinity).

On a cluster each role owns its GPUs; on a CPU machine the roles share the cores unless told
otherwise. The training cluster gives each role's actors `EMO_R3_CPU_CORES` (a Linux cpu list); an
engine or a learner rank calls `pin_from_env()` before it starts any thread: the process is bound
to those cores, its torch and OpenMP threads are as many as the cores, and the vLLM engine-core
process it starts inherits both.
"""

from __future__ import annotations

import os

CORES_ENV = "EMO_R3_CPU_CORES"


def parse_cpu_list(text: str) -> list[int]:
    """ "0", "0-3", "0,2,4-5" → the core numbers (Linux cpu-list syntax)."""
    cores: set[int] = set()
    for part in text.replace(" ", "").split(","):
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"{text!r} is not a cpu list (e.g. 0, 1-3, 0,2)")
        first, last = int(lo), int(hi) if sep else int(lo)
        if last < first:
            raise ValueError(f"{text!r}: range {part} runs backwards")
        cores.update(range(first, last + 1))
    return sorted(cores)


def pin_from_env() -> list[int] | None:
    """Bind this process to the cores in EMO_R3_CPU_CORES, with as many torch/OpenMP threads; the
    cores it runs on (None: the variable is unset, nothing changed)."""
    text = os.environ.get(CORES_ENV)
    if not text:
        return None
    cores = parse_cpu_list(text)
    missing = set(cores) - set(range(os.cpu_count() or 1))
    if missing:
        raise ValueError(
            f"cluster.cpu_affinity: cores {sorted(missing)} do not exist on this node ({os.cpu_count()} cores)"
        )
    os.sched_setaffinity(0, cores)
    os.environ["OMP_NUM_THREADS"] = str(len(cores))  # the engine-core process starts with it
    import torch

    torch.set_num_threads(len(cores))
    return cores
