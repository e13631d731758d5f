"""Where the service keeps caches (built models, generated data, compiled ops) and runs."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """`$EMO_R3_CACHE_DIR`, else `.cache/` of a source checkout, else `~/.cache/emo-r3`."""
    if env := os.environ.get("EMO_R3_CACHE_DIR"):
        return Path(env).expanduser().resolve()
    if (PROJECT_ROOT / "pyproject.toml").is_file():
        return PROJECT_ROOT / ".cache"
    return Path.home() / ".cache" / "emo-r3"


def torch_extensions_dir() -> Path:
    """Where DeepSpeed would JIT-compile its ops (TORCH_EXTENSIONS_DIR of the workers); on CPU none is
    built (learner.policy.skip_shm_comm_op), so it stays empty unless an op is asked for."""
    return cache_dir() / "torch_extensions"
