"""Compile DeepSpeed's CPU shared-memory comm op once, into the project cache.

Without this the first training run compiles it in every learner rank at once (about 20 s and
5 GB of peak RAM with two ranks). Run by scripts/setup_env.sh; safe to run again.
"""

from __future__ import annotations

import os
import time

from cluster.paths import torch_extensions_dir


def main() -> None:
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(torch_extensions_dir()))
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    start = time.perf_counter()
    from deepspeed.comm.torch import build_shm_op

    op = build_shm_op()
    state = "ready" if op is not None else "not available on this platform (gloo only)"
    print(f"[setup] DeepSpeed shm comm op {state} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
