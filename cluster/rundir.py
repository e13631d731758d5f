"""The run directory: resolved config, metrics, dumps and checkpoints of one run."""

from __future__ import annotations

import time
from pathlib import Path

from cluster.config import RunConfig, to_yaml


def run_dir(cfg: RunConfig) -> Path:
    """`<output_dir>/<run_name or timestamp>`, created, with the resolved config written into it."""
    name = cfg.cluster.run_name or time.strftime("%Y%m%d-%H%M%S")
    path = Path(cfg.cluster.output_dir).expanduser() / name
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(to_yaml(cfg))
    return path
