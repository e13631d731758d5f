"""The run directory: resolved config, metrics, dumps and checkpoints of one run."""

from __future__ import annotations

import time
from pathlib import Path

from cluster.config import RunConfig, to_yaml


def run_path(cfg: RunConfig) -> Path:
    """`<output_dir>/<run_name or timestamp>`; nothing is created."""
    name = cfg.cluster.run_name or time.strftime("%Y%m%d-%H%M%S")
    return Path(cfg.cluster.output_dir).expanduser() / name


def run_dir(cfg: RunConfig) -> Path:
    """`run_path(cfg)`, created, with the resolved config written into it."""
    path = run_path(cfg)
    path.mkdir(parents=True, exist_ok=True)
    write_config(path, cfg)
    return path


def write_config(run: Path, cfg: RunConfig) -> None:
    from cluster.checkpoints import CONFIG_FILE, write_atomic

    write_atomic(run / CONFIG_FILE, to_yaml(cfg))
