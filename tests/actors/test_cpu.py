"""Pinning a role's process to its cores (cluster.cpu_affinity → EMO_R3_CPU_CORES)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from actors.cpu import CORES_ENV, parse_cpu_list

PROBE = (
    "import os, torch; from actors.cpu import pin_from_env; cores = pin_from_env(); "
    "print(cores, sorted(os.sched_getaffinity(0)), torch.get_num_threads(), os.environ.get('OMP_NUM_THREADS'))"
)


def _probe(cores: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != CORES_ENV}
    if cores is not None:
        env[CORES_ENV] = cores
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 or cores is not None, done.stderr
    return done.stdout.strip() if done.returncode == 0 else done.stderr


def test_a_process_is_bound_to_its_cores_with_as_many_threads():
    assert _probe("0") == "[0] [0] 1 1"
    assert _probe(None).startswith("None ")  # unset: nothing changes


def test_a_core_that_does_not_exist_is_a_clear_error():
    assert "do not exist on this node" in _probe(str(os.cpu_count() + 3))


@pytest.mark.parametrize(
    "text, cores", [("0", [0]), ("0-2", [0, 1, 2]), ("3,1", [1, 3]), (" 0, 2-3", [0, 2, 3])]
)
def test_cpu_lists(text, cores):
    assert parse_cpu_list(text) == cores
