"""Starting or joining Ray, safely: loopback by default, no dashboard, token auth off-box.

`ray` is imported here and in the other cluster modules only; workers are plain classes.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from urllib.parse import urlparse

from cluster.config import ConfigError, RunConfig
from cluster.paths import torch_extensions_dir

log = logging.getLogger(__name__)

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "auto", ""}


def worker_env(cfg: RunConfig, on_gpu: bool) -> dict[str, str]:
    """Environment of every Ray worker process (STACK.md §4, §6, §7)."""
    env = {
        "TOKENIZERS_PARALLELISM": "false", "TORCH_EXTENSIONS_DIR": os.fspath(torch_extensions_dir()),
        # engines and ranks log errors only; their progress bars and known-harmless warnings are noise
        "VLLM_LOGGING_LEVEL": "ERROR", "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "PYTHONWARNINGS": "ignore::FutureWarning,ignore::UserWarning,ignore::DeprecationWarning",
    }  # fmt: skip
    if not on_gpu:
        threads = str(max(1, int(cfg.cluster.num_cpus)))
        env |= {
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": threads,
            "DS_ACCELERATOR": "cpu", "GLOO_SOCKET_IFNAME": "lo", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        }  # fmt: skip
    return env


def ray_address(cfg: RunConfig) -> str | None:
    return cfg.cluster.ray_address or os.environ.get("RAY_ADDRESS") or None


def is_loopback(address: str) -> bool:
    host = urlparse(address if "://" in address else f"ray://{address}").hostname or ""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_address_is_safe(cfg: RunConfig) -> None:
    """Refuse a non-loopback cluster without token auth unless the user opted out (LESSONS.md)."""
    address = ray_address(cfg)
    if address is None or is_loopback(address):
        return
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" or cfg.cluster.allow_insecure_remote:
        return
    raise ConfigError(
        f"Ray address {address!r} is not on loopback and token auth is off: anyone who reaches it can run code. "
        "Set RAY_AUTH_MODE=token (with the cluster's token), or cluster.allow_insecure_remote=true to accept the risk"
    )


def start_ray(cfg: RunConfig, on_gpu: bool, extra_env: dict[str, str] | None = None) -> None:
    """Join the configured cluster, or start a local Ray bound to 127.0.0.1 without a dashboard.

    If Ray is already initialised in this process (a test session, a notebook), it is reused.
    """
    import ray

    check_address_is_safe(cfg)
    env = worker_env(cfg, on_gpu) | (extra_env or {})
    if ray.is_initialized():
        return
    address = ray_address(cfg)
    if address is not None:  # actors get `env` through their own runtime env (cluster.pools.Placement)
        ray.init(address=address, log_to_driver=True)
        return
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = (
        "0"  # keep every Ray listener on 127.0.0.1 (STACK.md §6)
    )
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(
        num_cpus=cfg.cluster.num_cpus, num_gpus=0 if not on_gpu else None, include_dashboard=False,
        _node_ip_address="127.0.0.1", runtime_env={"env_vars": env}, logging_level=logging.WARNING,
        log_to_driver=cfg.cluster.worker_logs,
    )  # fmt: skip
