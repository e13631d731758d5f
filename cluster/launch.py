"""Starting or joining Ray, safely: loopback by default, no dashboard, token auth off-box.

`ray` is imported here and in the other cluster modules only; workers are plain classes.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
from urllib.parse import urlparse

from cluster.config import ConfigError, RunConfig
from cluster.paths import torch_extensions_dir

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
LOOPBACK_NAMES = {"localhost", LOOPBACK, "::1", "auto", ""}
# Read by Ray at import: "0" lets a local node keep its loopback address (keep_local_ray_on_loopback).
LOCAL_RAY_FLAG = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def service_env(num_cpus: float, on_gpu: bool, local: bool = True) -> dict[str, str]:
    """Every environment variable the service sets for its engines, learner ranks and Ray (docs/STACK.md
    §4, §6, §7). The only other place that sets any is the learner rank, for the values only it knows:
    its rank and rendezvous, and what follows from them (learner.rank.set_distributed_env). `local`:
    every process on this machine, so gloo (vLLM's CPU engines, the learner) stays on loopback."""
    env = {
        "TOKENIZERS_PARALLELISM": "false",
        "TORCH_EXTENSIONS_DIR": os.fspath(torch_extensions_dir()),
        "RAY_USAGE_STATS_ENABLED": "0",
        # engines and ranks log errors only; their progress bars and known-harmless warnings are noise
        "VLLM_LOGGING_LEVEL": "ERROR",
        "TRANSFORMERS_VERBOSITY": "error",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "PYTHONWARNINGS": "ignore::FutureWarning,ignore::UserWarning,ignore::DeprecationWarning",
    }
    if not on_gpu:
        env |= {
            "VLLM_ENABLE_V1_MULTIPROCESSING": "1",  # the engine core in its own process, as on GPU
            "VLLM_CPU_OMP_THREADS_BIND": "nobind",
            "OMP_NUM_THREADS": str(max(1, int(num_cpus))),
            LOCAL_RAY_FLAG: "0",
        }
        if local:
            env["GLOO_SOCKET_IFNAME"] = "lo"
    return env


def worker_env(cfg: RunConfig, on_gpu: bool) -> dict[str, str]:
    """The environment of every Ray worker process of a run."""
    return service_env(cfg.cluster.num_cpus, on_gpu, local=ray_address(cfg) is None)


def use_service_env(num_cpus: float, on_gpu: bool) -> None:
    """The service's environment in this process, for an engine or a rank built here (the sample and
    eval commands, the benchmarks' baselines, the tests); what the user set already wins."""
    for key, value in service_env(num_cpus, on_gpu).items():
        os.environ.setdefault(key, value)


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


def keep_local_ray_on_loopback() -> None:
    """Make a local Ray bind every listener to 127.0.0.1, whenever `ray` was imported.

    Ray decides whether a node may use its loopback address once, when `ray` is first imported
    (`ray._private.ray_constants.ENABLE_RAY_CLUSTER`, from RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER); with it
    on, a `127.0.0.1` node address is rewritten to the machine's external address and the GCS, the
    raylet, the dashboard agent and every worker listen on all interfaces (STACK.md §6). Setting only
    the environment variable is too late once anything imported ray, so the constant is set too; the
    variable still reaches every process Ray starts.
    """
    os.environ[LOCAL_RAY_FLAG] = "0"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False


def start_ray(cfg: RunConfig, on_gpu: bool, extra_env: dict[str, str] | None = None) -> bool:
    """Join the configured cluster, or start a local Ray bound to 127.0.0.1 without a dashboard; True
    when this call connected (the caller then shuts Ray down when done).

    If Ray is already initialised in this process (a test session, a notebook), it is reused.
    """
    check_address_is_safe(cfg)
    address = ray_address(cfg)
    if address is None:
        keep_local_ray_on_loopback()  # before `import ray` below, and effective after an earlier one
    import ray

    if ray.is_initialized():
        return False
    if (
        address is not None
    ):  # actors get `worker_env` through their own runtime env (cluster.placement.Placement)
        ray.init(address=address, log_to_driver=True)
        raise_on_sigterm()
        return True
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(
        num_cpus=cfg.cluster.num_cpus,
        num_gpus=0 if not on_gpu else None,
        include_dashboard=False,
        _node_ip_address=LOOPBACK,
        runtime_env={"env_vars": worker_env(cfg, on_gpu) | (extra_env or {})},
        logging_level=logging.WARNING,
        log_to_driver=cfg.cluster.worker_logs,
    )
    raise_on_sigterm()
    return True


def raise_on_sigterm() -> None:
    """SIGTERM raises `cluster.stops.Stopped` in the main thread, so the command unwinds (actors killed,
    Ray shut down) and exits 143. Ray's driver installs a C++ handler that aborts the process (exit 134,
    no cleanup, actors orphaned until Ray notices); this one replaces it. `emo-r3 train` installs a
    gentler one for its loop (cluster.stops.StopSignal)."""
    import signal
    import threading

    from cluster.stops import Stopped

    def stop(signum, frame):
        raise Stopped(signum)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
