"""Shared fixtures. The real stack runs on CPU: vLLM's CPU build (its multiprocess engine core, as on GPUs), local Ray on loopback,
DeepSpeed on gloo, the tiny model built in code into the project cache."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.launch import use_service_env  # noqa: E402

use_service_env(num_cpus=2, on_gpu=False)  # the engines and ranks the tests build in this process
os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed imported here, outside a learner rank


def workers_pythonpath() -> str:
    """The project and the test folders: test modules importable by Ray workers."""
    test_dirs = sorted({str(p.parent) for p in (ROOT / "tests").rglob("test_*.py")})
    return os.pathsep.join([str(ROOT), *test_dirs])


def start_session_ray() -> None:
    """The session's local Ray (loopback, no dashboard), as `emo-r3 train` starts one."""
    from cluster.config import RunConfig
    from cluster.launch import start_ray

    start_ray(RunConfig(), on_gpu=False, extra_env={"PYTHONPATH": workers_pythonpath()})


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the session; a test module that needs another cluster stops it and starts it
    again after (tests/cluster/test_multinode.py)."""
    import ray

    start_session_ray()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def random_init_tiny_model() -> Path:
    """The embedded model's build without its caption pretraining (seconds, into the project cache):
    the same tokenizer, processor and chat template as `model.path=tiny`, random weights."""
    from cluster.embedded.corpus import tiny_corpus
    from cluster.embedded.tiny_model import ensure_tiny_model
    from cluster.paths import cache_dir

    return ensure_tiny_model(cache_dir() / "models", tiny_corpus())
